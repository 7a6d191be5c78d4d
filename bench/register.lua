-- wrk script: POST /api/v1/contacts/register, a new lead every time, with a phone and an e-mail
-- (as intake and integrations send them), optionally with an Idempotency-Key.
-- wrk -s bench/register.lua URL -- SOURCE_NAME RUN_DIGIT [key]
-- RUN_DIGIT (1-9) keeps the phones of different runs apart (+79<run><thread + 1><counter>, all valid
-- Russian mobile numbers: +7930... is not one); each wrk thread numbers its own
-- requests, so bodies never repeat.
local thread_id = 0

function setup(thread)
  thread:set("id", thread_id)
  thread_id = thread_id + 1
end

function init(args)
  counter = 0
  source = args[1] or "bench_source"
  run = args[2] or "0"
  with_key = args[3] == "key"
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"source_name": "%s", "phone": "+79%s%d%07d", "email": "lead-%s-%d-%d@example.com", '
    .. '"name": "Bench lead", "message": "load test"}',
    source, run, id + 1, counter, run, id, counter)
  if with_key then
    -- wrk.format takes the request's whole header table: wrk.headers (Content-Type, the
    -- Authorization given with -H) plus the key.
    local headers = {}
    for name, value in pairs(wrk.headers) do
      headers[name] = value
    end
    headers["Idempotency-Key"] = string.format("bench-%s-%d-%d", run, id, counter)
    return wrk.format(nil, nil, headers, body)
  end
  return wrk.format(nil, nil, nil, body)
end
