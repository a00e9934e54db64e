-- SPDX-License-Identifier: MIT
--
-- POST /{before,after}/batch (API.md, pattern 2: a sequential loop against a bounded stream).
-- Each request asks for `size` random users; `concurrency=0` leaves the field out so that the
-- service's BATCH_CONCURRENCY applies.
--
--   wrk ... -s deploy/wrk/batch.lua URL -- variant=after size=20 delay_ms=10 concurrency=0

local common = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local o

function init(args)
    o = common.options(args, { variant = "after", size = 20, delay_ms = 0, concurrency = 0,
                               max_id = 10000 })
    common.seed()
end

function request()
    local ids = {}
    for i = 1, o.size do
        ids[i] = common.user_id(o.max_id)
    end
    local body = string.format('{"ids":[%s],"delay_ms":%d', table.concat(ids, ","), o.delay_ms)
    if o.concurrency > 0 then
        body = body .. string.format(',"concurrency":%d', o.concurrency)
    end
    return wrk.format("POST", "/" .. o.variant .. "/batch", common.json_headers, body .. "}")
end
