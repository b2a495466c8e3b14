// Enhanced fan-out with the AWS SDK for JavaScript v3 over HTTP/2 (h2c, as NodeHttp2Handler
// speaks to an http:// endpoint): a consumer registered and waited on until ACTIVE, then
// SubscribeToShard from TRIM_HORIZON receiving two records put before it and two put while it
// is open, every call on the same HTTP/2 handler.
//
// Usage: node fanout.cjs KINESIS_ENDPOINT   (packages from tests/e2e/package.json, via NODE_PATH)

const {
  KinesisClient,
  CreateStreamCommand,
  DescribeStreamSummaryCommand,
  RegisterStreamConsumerCommand,
  DescribeStreamConsumerCommand,
  PutRecordCommand,
  SubscribeToShardCommand,
} = require("@aws-sdk/client-kinesis");
const { NodeHttp2Handler } = require("@smithy/node-http-handler");

const endpoint = process.argv[2];
const client = new KinesisClient({
  endpoint,
  region: "us-east-1",
  credentials: { accessKeyId: "test", secretAccessKey: "test" },
  requestHandler: new NodeHttp2Handler({ sessionTimeout: 60000 }),
  maxAttempts: 1,
});

function check(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main() {
  await client.send(new CreateStreamCommand({ StreamName: "js", ShardCount: 1 }));
  const summary = await client.send(new DescribeStreamSummaryCommand({ StreamName: "js" }));
  const streamArn = summary.StreamDescriptionSummary.StreamARN;
  const registered = await client.send(
    new RegisterStreamConsumerCommand({ StreamARN: streamArn, ConsumerName: "js-app" }),
  );
  const consumerArn = registered.Consumer.ConsumerARN;
  for (let i = 0; ; i++) {
    const described = await client.send(new DescribeStreamConsumerCommand({ ConsumerARN: consumerArn }));
    if (described.ConsumerDescription.ConsumerStatus === "ACTIVE") break;
    check(i < 100, "the consumer never became ACTIVE");
    await sleep(100);
  }
  const put = (text) =>
    client.send(new PutRecordCommand({ StreamName: "js", PartitionKey: "k", Data: Buffer.from(text) }));
  await put("before-0");
  await put("before-1");

  const subscription = await client.send(
    new SubscribeToShardCommand({
      ConsumerARN: consumerArn,
      ShardId: "shardId-000000000000",
      StartingPosition: { Type: "TRIM_HORIZON" },
    }),
  );
  const got = [];
  let continuation;
  let putAfter = false;
  for await (const event of subscription.EventStream) {
    const shardEvent = event.SubscribeToShardEvent;
    if (!shardEvent) continue;
    for (const record of shardEvent.Records) {
      got.push(Buffer.from(record.Data).toString());
    }
    continuation = shardEvent.ContinuationSequenceNumber;
    if (got.length >= 2 && !putAfter) {
      putAfter = true;
      await put("after-0");
      await put("after-1");
    }
    if (got.length >= 4) break;
  }
  check(
    JSON.stringify(got) === JSON.stringify(["before-0", "before-1", "after-0", "after-1"]),
    `records: ${JSON.stringify(got)}`,
  );
  check(/^\d+$/.test(continuation), `ContinuationSequenceNumber ${continuation}`);
  console.log("fanout.cjs: ok");
}

const timeout = setTimeout(() => {
  console.error("fanout.cjs timed out");
  process.exit(1);
}, 60000);

main()
  .then(() => {
    clearTimeout(timeout);
    client.destroy();
    process.exit(0);
  })
  .catch((error) => {
    console.error(error);
    process.exit(1);
  });
