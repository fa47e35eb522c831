-- bench/mix.lua: wrk draws each request's kind by weight (bench/surge_mix.sh writes the
-- table of kinds into the file named by MIX_KINDS: one line per kind,
-- "name<TAB>weight<TAB>path<TAB>cookie-or-dash") and counts the answers by status, so a
-- run where a kind did not get the answer it should (a 429 that became a 200, a cache
-- hit that became a 502) is seen, not averaged in.
--
-- Latency mode (MIX_RATE=<req/s in all>, run with as many threads as connections, -tN
-- -cN): each connection sends at MIX_RATE/N req/s (wrk's delay()), and since a thread
-- then has one request in flight at a time, request() and response() alternate: the
-- script times each request (clock_gettime through LuaJIT's ffi) and keeps a histogram
-- per kind (10 us buckets), printed as "latency <kind> <n> <p50 ms> <p99 ms>".

local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } mix_timespec;
  int clock_gettime(int clk, mix_timespec *ts);
]]
local ts = ffi.new("mix_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local kinds = {}
local total = 0

local function load_kinds()
  local file = os.getenv("MIX_KINDS")
  assert(file, "MIX_KINDS is not set")
  for line in io.lines(file) do
    local name, weight, path, cookie = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t([^\t]+)$")
    if name then
      total = total + tonumber(weight)
      kinds[#kinds + 1] = { name = name, upto = total, path = path, cookie = cookie }
    end
  end
  assert(#kinds > 0, "no kinds in " .. file)
end

load_kinds()

local threads = {}
local rate = tonumber(os.getenv("MIX_RATE") or "")

-- Each thread draws its own fixed sequence (seeded by its number), the same on every run
-- and arm.
local seed = 12345

local function rand()
  -- xorshift32
  seed = bit.band(bit.bxor(seed, bit.lshift(seed, 13)), 0xffffffff)
  seed = bit.bxor(seed, bit.rshift(seed, 17))
  seed = bit.band(bit.bxor(seed, bit.lshift(seed, 5)), 0xffffffff)
  return (seed % 1000003) / 1000003
end

local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("id", nthreads)
  threads[#threads + 1] = thread
end

local pause_ms = 0
local last_kind, sent_at

function init(args)
  seed = 12345 + 7919 * (id or 0)
  counts = {}
  -- Flat ("kind bucket" -> count): wrk's thread:get() crashes on nested tables.
  hist = {}
  -- Formatted here, not at load: wrk sets the Host header after loading the script.
  for _, k in ipairs(kinds) do
    local headers = {}
    if k.cookie ~= "-" then headers["Cookie"] = k.cookie end
    k.req = wrk.format("GET", k.path, headers)
  end
  if rate then
    -- This thread's share of the rate; every thread has one connection (-tN -cN).
    pause_ms = 1000 * tonumber(os.getenv("MIX_THREADS") or "1") / rate
  end
end

if rate then
  function delay()
    return pause_ms
  end
end

function request()
  local x = rand() * total
  local pick = kinds[#kinds]
  for _, k in ipairs(kinds) do
    if x < k.upto then pick = k break end
  end
  last_kind = pick.name
  if rate then sent_at = now_us() end
  return pick.req
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if rate and sent_at and last_kind then
    local key = last_kind .. " " .. math.floor((now_us() - sent_at) / 10)
    hist[key] = (hist[key] or 0) + 1
    sent_at = nil
  end
end

function done(summary, latency, requests)
  local all, hs = {}, {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    if c then
      for k, v in pairs(c) do all[k] = (all[k] or 0) + v end
    end
    local h = t:get("hist")
    if h then
      for key, n in pairs(h) do
        local kind, b = key:match("^(%S+) (%d+)$")
        b = tonumber(b)
        hs[kind] = hs[kind] or {}
        hs[kind][b] = (hs[kind][b] or 0) + n
      end
    end
  end
  local keys = {}
  for k in pairs(all) do keys[#keys + 1] = k end
  table.sort(keys)
  for _, k in ipairs(keys) do
    io.write(string.format("status %s %d\n", k, all[k]))
  end
  if not rate then return end
  for _, k in ipairs(kinds) do
    local h = hs[k.name] or {}
    local bs, n = {}, 0
    for b, c in pairs(h) do bs[#bs + 1] = b; n = n + c end
    table.sort(bs)
    local function pct(p)
      local want, seen = p * n, 0
      for _, b in ipairs(bs) do
        seen = seen + h[b]
        if seen >= want then return (b + 1) * 10 / 1000 end
      end
      return 0
    end
    io.write(string.format("latency %s %d %.3f %.3f\n", k.name, n, pct(0.5), pct(0.99)))
  end
end
