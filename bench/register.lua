-- wrk script: POST /api/v1/contacts/register, a new lead every time.
-- wrk -s bench/register.lua URL -- SOURCE_NAME RUN_PREFIX
-- Each wrk thread numbers its own requests, so bodies never repeat.
local thread_id = 0

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  counter = 0
  source = args[1] or "bench_source"
  prefix = args[2] or "run"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"source_name": "%s", "external_id": "%s-%d-%d", "name": "Bench lead", "message": "load test"}',
    source, prefix, id, counter)
  return wrk.format(nil, nil, nil, body)
end
