// A presence feed consumer in Node.js, with the `redis` npm package (v4 API).
//
//   npm install redis@4
//   node feed_consumer.mjs redis://127.0.0.1:6379 'presence:{presence:feed:0}' [--drain]
//
// It reads one stream (one shard) in the consumer group "node-attendance", prints
// each entry and acknowledges it once printed. With --drain it stops when a read
// finds nothing new; without it, it keeps reading.
import { createClient } from "redis";

const args = process.argv.slice(2);
const drain = args.includes("--drain");
const [url, stream] = args.filter((arg) => arg !== "--drain");
const group = "node-attendance";
const consumer = `worker-${process.pid}`;

// An id field's value, typed by its letter in id_types: "i" an integer (a BigInt:
// it may exceed Number.MAX_SAFE_INTEGER), "s" a string, "-" none.
function typedId(text, type) {
  if (type === "-") return null;
  return type === "i" ? BigInt(text) : text;
}

const client = createClient({ url });
client.on("error", (err) => console.error("redis:", err.message));
await client.connect();

// The group, from the start of the stream (another consumer may have created it).
try {
  await client.xGroupCreate(stream, group, "0", { MKSTREAM: true });
} catch (err) {
  if (!String(err.message).startsWith("BUSYGROUP")) throw err;
}

for (;;) {
  const reply = await client.xReadGroup(
    group,
    consumer,
    { key: stream, id: ">" },
    { COUNT: 100, BLOCK: 1000 },
  );
  if (reply === null) {
    if (drain) break;
    continue;
  }
  for (const { name, messages } of reply) {
    for (const { id, message: entry } of messages) {
      if (entry.schema !== "1") {
        // not an entry this consumer knows: acknowledge it and go on
        await client.xAck(name, group, id);
        continue;
      }
      const types = entry.id_types;
      const org = typedId(entry.org_id, types[0]);
      const user = typedId(entry.user_id, types[1]);
      console.log(
        [
          id,
          entry.kind,
          `org=${org}`,
          `user=${user}`,
          `role=${entry.role}`,
          `sid=${entry.sid}`,
          `version=${entry.version}`,
          `reason=${entry.reason}`,
        ].join(" "),
      );
      await client.xAck(name, group, id); // after the work: a crash means a redelivery
    }
  }
}
await client.quit();
