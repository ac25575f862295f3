// The Responses API through OpenAI's JS SDK: a plain response, an RSA stream (its rsa.progress
// events must come through the SDK's iterator), a background response polled to completion.
// Run by tests/e2e/test_responses.py: node responses_sdk.mjs, with OPENAI_BASE_URL, MODEL and
// OPENAI_API_KEY set and the `openai` package resolvable (NODE_PATH). Prints one JSON summary.
import OpenAI from "openai";

const client = new OpenAI({ maxRetries: 0 });
const model = process.env.MODEL;
const rsa = JSON.parse(process.env.RSA);
const input = "What is 7 + 5? Put the answer in \\boxed{}.";

function check(condition, message) {
  if (!condition) {
    console.error(message);
    process.exit(1);
  }
}

const plain = await client.responses.create({ model, input, max_output_tokens: 24 });
check(plain.object === "response" && plain.output_text.length > 0, `plain: ${JSON.stringify(plain)}`);
check(plain.usage.output_tokens > 0 && plain.usage.output_tokens <= 24, `plain usage: ${JSON.stringify(plain.usage)}`);

const stream = await client.responses.create({ model, input, stream: true, rsa });
const types = [];
const numbers = [];
let text = "";
let final = null;
for await (const event of stream) {
  types.push(event.type);
  numbers.push(event.sequence_number);
  if (event.type === "response.output_text.delta") text += event.delta;
  if (event.type === "response.completed" || event.type === "response.incomplete") final = event.response;
}
check(types.includes("rsa.progress"), `no rsa.progress event: ${types}`);
check(numbers.every((n, i) => n === i), `sequence numbers: ${numbers}`);
check(final !== null && ["completed", "incomplete"].includes(final.status), `no final response: ${types}`);
const finalText = final.output.filter((i) => i.type === "message").map((i) => i.content[0].text).join("");
check(text === finalText, `deltas ${JSON.stringify(text)} != ${JSON.stringify(finalText)}`);

let job = await client.responses.create({ model, input, background: true, rsa });
check(job.status === "queued" || job.status === "in_progress", `background: ${job.status}`);
const deadline = Date.now() + 240_000;
while (!["completed", "failed", "cancelled", "incomplete"].includes(job.status) && Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, 200));
  job = await client.responses.retrieve(job.id);
}
check(["completed", "incomplete"].includes(job.status) && job.output_text.length > 0, `background ended ${job.status}`);

console.log(JSON.stringify({ plain: plain.output_text, progress: types.filter((t) => t === "rsa.progress").length,
                             events: types.length, background: job.status }));
