-- wrk script for bench/ingress.py: POST a realistic Telegram Update (~535 bytes)
-- with a unique update_id per request.
--
--   wrk -t2 -c64 -d10s --latency -s bench/webhook.lua URL -- <id_base> <secret>
--
-- Each wrk thread gets its own update_id range: [id_base + n * 10^7, ...), n = thread
-- index, so ids never repeat within a run (nor across runs given different bases).
-- Chat ids cycle over 997 private chats, so updates spread over the stream partitions.
-- done() prints one machine-readable line: "WRK_JSON {...}" (latencies in µs).

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

local template = '{"update_id":%d,"message":{"message_id":%d,'
  .. '"from":{"id":%d,"is_bot":false,"first_name":"Alice","last_name":"Novak",'
  .. '"username":"alice_novak","language_code":"en","is_premium":true},'
  .. '"chat":{"id":%d,"first_name":"Alice","last_name":"Novak","username":"alice_novak",'
  .. '"type":"private"},"date":%d,"text":"Hi! Can you check the status of order 4411? '
  .. 'It was due on Monday and the tracking page https://example.com/track/4411 '
  .. 'still says label created.","entities":[{"offset":87,"length":30,"type":"url"}]}}'

local next_id = 0
local date = 1735993207

function init(args)
  local base = tonumber(args[1]) or 100000000
  next_id = base + (thread_index or 0) * 10000000
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-Telegram-Bot-Api-Secret-Token"] = args[2] or ""
  date = os.time()
end

function request()
  next_id = next_id + 1
  local chat = 6100000000 + next_id % 997
  local body = string.format(template, next_id, next_id % 100000, chat, chat, date)
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p75":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
    summary.duration, summary.requests, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(75), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max))
end
