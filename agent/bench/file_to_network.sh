#!/usr/bin/env bash
# File-to-network benchmark of gantry-agent, with rsyslog measured in the same run on the same file.
#
# Both shippers read a generated log file and send it to a local sink (`null-plane`, from the tests
# crate) that counts what arrives, so the figures are the shipper's and not the plane's:
#   gantry-agent: tail -> disk buffer (fsync per batch) -> gzipped OTLP/HTTP protobuf -> POST /v1/logs
#   rsyslog:      imfile -> in-memory queue -> omfwd TCP, one raw line per message (LF framing)
#
# 1. Full speed: each shipper in turn reads the whole file (BENCH_BYTES, default 1 GiB). Wall time from
#    starting the shipper to the sink's last receipt of the last line; CPU seconds (utime + stime from
#    /proc/PID/stat), peak RSS (VmHWM) and RSS at the end of the shipper process.
# 2. Idle, then steady rate: each shipper in turn tails a fresh, empty file for BENCH_IDLE_SECS (idle
#    RSS and CPU, default 20), then a writer appends BENCH_RATE lines/s (default 1,000, in 10 ms chunks) for
#    BENCH_RATE_SECS (default 60); CPU share and RSS are taken after BENCH_WARMUP_SECS (default 10).
#
# Prints a Markdown section (machine, commit, command, table with agent/rsyslog ratios) on stdout;
# progress goes to stderr. Run it on a quiet machine: the shippers, the sink and the writer share it.
#
#   agent/bench/file_to_network.sh > bench.md
#   BENCH_BYTES=50000000 BENCH_RATE_SECS=15 agent/bench/file_to_network.sh     # a smoke run
#
# Other settings: BENCH_TMPDIR (parent of the work dir, default /var/tmp: a disk, not tmpfs),
# BENCH_KEEP=1 (keep the work dir and logs), BENCH_BUILD=0 (skip `cargo build`), BENCH_TIMEOUT_SECS
# (per full-speed run, default 3600), BENCH_STALL_SECS (fail when nothing arrives for this long, default 60).
set -euo pipefail
export LC_ALL=C

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BYTES=${BENCH_BYTES:-1073741824}
RATE=${BENCH_RATE:-1000}
RATE_SECS=${BENCH_RATE_SECS:-60}
WARMUP_SECS=${BENCH_WARMUP_SECS:-10}
IDLE_SECS=${BENCH_IDLE_SECS:-20}
TIMEOUT_SECS=${BENCH_TIMEOUT_SECS:-3600}
STALL_SECS=${BENCH_STALL_SECS:-60}
TMP_PARENT=${BENCH_TMPDIR:-/var/tmp}
KEEP=${BENCH_KEEP:-0}
BUILD=${BENCH_BUILD:-1}
SHIPPERS=(gantry-agent rsyslog)
AGENT_BIN=$ROOT/target/release/gantry-agent
SINK_BIN=$ROOT/target/release/null-plane
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

for n in BYTES RATE RATE_SECS WARMUP_SECS IDLE_SECS TIMEOUT_SECS STALL_SECS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "BENCH_$n must be a whole number, not '${!n}'"
done
((WARMUP_SECS < RATE_SECS)) || die "BENCH_WARMUP_SECS ($WARMUP_SECS) must be below BENCH_RATE_SECS ($RATE_SECS)"
((RATE > 0 && BYTES > 0)) || die "BENCH_RATE and BENCH_BYTES must be positive"
for tool in python3 curl awk getconf; do
    command -v "$tool" >/dev/null || die "$tool is needed; install it first"
done

# ---------------------------------------------------------------------------------------------------
# Processes: every one started here is recorded and stopped on exit.

PIDS=()
WORK=

# Stops one process started by this script: SIGTERM, then SIGKILL after 10 s.
stop_pid() {
    local pid=$1 i
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# Drops a process that ended from the list stopped on exit.
forget_pid() {
    local kept=() p
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]}")
}

cleanup() {
    local status=$?
    trap - EXIT
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $KEEP == 1 || $status != 0 ]]; then
            log "work dir kept: $WORK ($(du -sh "$WORK" 2>/dev/null | cut -f1); remove it when done)"
        else
            rm -rf -- "$WORK"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until "$@" succeeds, for at most $2 seconds; $1 names what is awaited.
wait_for() {
    local what=$1 secs=$2 i
    shift 2
    for ((i = 0; i < secs * 20; i++)); do
        "$@" 2>/dev/null && return 0
        sleep 0.05
    done
    die "timed out after ${secs} s waiting for $what"
}

# CPU time of a process (utime + stime) in clock ticks. Field 2 may hold spaces: cut after the last ')'.
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    local -a f
    read -r -a f <<<"$stat"
    echo $((f[11] + f[12]))
}

# A `/proc/PID/status` figure in KiB (VmHWM, VmRSS).
status_kib() { awk -v key="$2:" '$1 == key { print $2 }' "/proc/$1/status"; }

now() { echo "$EPOCHREALTIME"; }

# Float arithmetic: calc 'a / b' (awk expression), printed with %.6f.
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# Sleeps until the wall clock reaches $1 (seconds since the epoch, fractional).
sleep_until() {
    local left
    left=$(calc "$1 - $EPOCHREALTIME")
    if awk "BEGIN { exit !($left > 0) }"; then sleep "$left"; fi
}

# Results, as key=value lines for the report.
RESULTS=
result() { printf '%s=%s\n' "$1" "$2" >>"$RESULTS"; }

# ---------------------------------------------------------------------------------------------------
# The sink.

SINK_PID=
SINK_HTTP=
SINK_TCP_PORT=

# Starts a fresh sink writing into dir $1; it notes when its count reaches $2 (optional).
start_sink() {
    local dir=$1 mark=${2:-}
    "$SINK_BIN" --addr 127.0.0.1:0 --tcp-addr 127.0.0.1:0 ${mark:+--mark "$mark"} \
        >"$dir/sink.out" 2>"$dir/sink.err" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_for "the sink's addresses" 10 grep -q '^tcp ' "$dir/sink.out"
    SINK_HTTP=$(awk '$1 == "http" { print $2 }' "$dir/sink.out")
    SINK_TCP_PORT=$(awk '$1 == "tcp" { print $2 }' "$dir/sink.out")
    SINK_TCP_PORT=${SINK_TCP_PORT##*:}
}

COUNT_JSON=
sink_count() { COUNT_JSON=$(curl -fsS --max-time 5 "http://$SINK_HTTP/count"); }
# A number from the last /count answer.
count_of() {
    [[ $COUNT_JSON =~ \"$1\":([0-9]+) ]] || die "no $1 in the sink's answer: $COUNT_JSON"
    echo "${BASH_REMATCH[1]}"
}

# What the sink counts for each shipper: OTLP log records, or TCP lines.
counted_key() { [[ $1 == gantry-agent ]] && echo records || echo tcp_lines; }
last_key() { [[ $1 == gantry-agent ]] && echo last_logs_unix_micros || echo last_tcp_unix_micros; }
mark_key() { [[ $1 == gantry-agent ]] && echo records_mark_unix_micros || echo tcp_lines_mark_unix_micros; }

# ---------------------------------------------------------------------------------------------------
# The shippers.

SHIPPER_PID=

write_rsyslog_conf() {
    local dir=$1 file=$2
    mkdir -p "$dir/rsyslog-work"
    # Only what is loaded here runs: no imuxsock (/dev/log), no imklog. imfile reads a file it has no
    # state for from its start (freshStartTail is off by default). The input has its own ruleset, so
    # rsyslog's own messages (start, errors) go to a file and not to the sink.
    cat >"$dir/rsyslog.conf" <<EOF
global(workDirectory="$dir/rsyslog-work" maxMessageSize="64k")
module(load="imfile" mode="inotify")
template(name="bench_raw_line" type="string" string="%rawmsg%\n")
ruleset(name="bench") {
    action(type="omfwd" target="127.0.0.1" port="$SINK_TCP_PORT" protocol="tcp" template="bench_raw_line")
}
input(type="imfile" file="$file" tag="bench" ruleset="bench")
action(type="omfile" file="$dir/rsyslog-internal.log")
EOF
    rsyslogd -N1 -f "$dir/rsyslog.conf" >"$dir/rsyslog-check.log" 2>&1 ||
        die "rsyslog rejected its config: $(cat "$dir/rsyslog-check.log")"
}

# Starts shipper $1 on file $2 with its state in dir $3; sets SHIPPER_PID.
start_shipper() {
    local name=$1 file=$2 dir=$3
    case $name in
    gantry-agent)
        "$AGENT_BIN" --plane "http://$SINK_HTTP" --token bench --data-dir "$dir/agent-data" --file "$file" \
            --no-docker --no-host-metrics --otlp-grpc-addr off --otlp-http-addr off \
            --http-addr 127.0.0.1:0 >"$dir/agent.log" 2>&1 &
        ;;
    rsyslog)
        write_rsyslog_conf "$dir" "$file"
        rsyslogd -n -f "$dir/rsyslog.conf" -i "$dir/rsyslogd.pid" >"$dir/rsyslogd.log" 2>&1 &
        ;;
    esac
    SHIPPER_PID=$!
    PIDS+=("$SHIPPER_PID")
}

# The agent's /metrics address, from the endpoints file in its data dir.
agent_http() { sed -n 's/.*"http":"\([^"]*\)".*/\1/p' "$1/agent-data/agent-endpoints.json" 2>/dev/null; }

shipper_alive() {
    kill -0 "$SHIPPER_PID" 2>/dev/null ||
        die "$1 exited early; its output is in $2 (kept)"
}

# ---------------------------------------------------------------------------------------------------
# Log lines: a generator for the full-speed file and a paced writer for the steady run.

write_python() {
    cat >"$WORK/lines.py" <<'EOF'
"""Realistic log lines (about 200 bytes): logfmt, JSON and plain text, with timestamps, levels, request ids and
durations. `lines.py file PATH BYTES` writes a file of at least BYTES; `lines.py rate PATH RATE SECS` appends RATE
lines/s for SECS seconds in 10 ms chunks. Both print: lines bytes seconds cpu_seconds."""
import os
import random
import sys
import time

SERVICES = ["checkout", "payments", "cart", "search", "auth", "inventory", "shipping", "gateway"]
PATHS = ["/api/v1/orders", "/api/v1/cart/items", "/api/v1/search", "/api/v1/users/me", "/api/v1/payments",
         "/healthz", "/api/v1/inventory/reserve", "/api/v2/shipping/quote"]
METHODS = ["GET", "GET", "GET", "POST", "POST", "PUT", "DELETE"]
LEVELS = ["info"] * 16 + ["debug"] * 1 + ["warn"] * 2 + ["error"] * 1
MESSAGES = {
    "info": ["request completed", "order placed", "cache refreshed", "payment authorized", "user signed in"],
    "debug": ["cache lookup", "query planned", "connection reused"],
    "warn": ["upstream responded slowly", "retrying request", "rate limit close"],
    "error": ["upstream connection refused", "payment declined by issuer", "deadline exceeded"],
}
PLAIN_LEVELS = {"info": "INFO", "debug": "DEBUG", "warn": "WARN", "error": "ERROR"}


class Lines:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.second = None
        self.prefix = ""

    def stamp(self, t):
        second = int(t)
        if second != self.second:
            self.second = second
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return "%s.%03dZ" % (self.prefix, int((t - second) * 1000))

    def line(self, t):
        r = self.rng
        ts = self.stamp(t)
        level = r.choice(LEVELS)
        service = r.choice(SERVICES)
        msg = r.choice(MESSAGES[level])
        rid = "%016x" % r.getrandbits(64)
        ms = r.lognormvariate(3.0, 1.0)
        status = 200 if level in ("info", "debug") else r.choice([429, 500, 502, 503, 504])
        kind = r.random()
        if kind < 0.45:
            return ('ts=%s level=%s service=%s msg="%s" request_id=%s method=%s path=%s/%d status=%d '
                    'duration_ms=%.2f bytes=%d user_id=u_%d\n'
                    % (ts, level, service, msg, rid, r.choice(METHODS), r.choice(PATHS), r.randrange(100000),
                       status, ms, r.randrange(200, 60000), r.randrange(1000000)))
        if kind < 0.85:
            return ('{"ts":"%s","level":"%s","service":"%s","msg":"%s","request_id":"%s",'
                    '"upstream":"10.0.%d.%d:8443","duration_ms":%.1f,"status":%d,"attempt":%d}\n'
                    % (ts, level, service, msg, rid, r.randrange(8), r.randrange(256), ms, status,
                       r.randrange(1, 4)))
        return ('%s %-5s [worker-%d] %s - %s for order %d in %.1f ms (request_id=%s, peer=10.0.%d.%d)\n'
                % (ts.replace("T", " "), PLAIN_LEVELS[level], r.randrange(16), service, msg,
                   r.randrange(1000000), ms, rid, r.randrange(8), r.randrange(256)))


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def file_mode(path, target):
    gen = Lines(20261125)
    t = 1767225600.0  # 2026-01-01T00:00:00Z, then 5 ms apart
    lines = size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    while size < target:
        chunk = []
        for _ in range(4096):
            chunk.append(gen.line(t))
            t += 0.005
        data = "".join(chunk).encode()
        write_all(fd, data)
        lines += len(chunk)
        size += len(data)
    os.fsync(fd)
    os.close(fd)
    return lines, size


def rate_mode(path, rate, secs):
    gen = Lines(7)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    total = rate * secs
    lines = size = 0
    start = time.monotonic()
    tick = 0
    while lines < total:
        due = min(total, int((time.monotonic() - start) * rate))
        if due > lines:
            now = time.time()
            data = "".join(gen.line(now) for _ in range(due - lines)).encode()
            write_all(fd, data)
            size += len(data)
            lines = due
        tick += 1
        delay = start + tick * 0.01 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    os.close(fd)
    return lines, size


def main():
    began, cpu = time.monotonic(), time.process_time()
    if sys.argv[1] == "file":
        lines, size = file_mode(sys.argv[2], int(sys.argv[3]))
    else:
        lines, size = rate_mode(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    print(lines, size, "%.3f" % (time.monotonic() - began), "%.3f" % (time.process_time() - cpu))


main()
EOF
}

# ---------------------------------------------------------------------------------------------------
# Runs.

# Full speed: shipper $1 reads the whole file; wall time until the sink has every line.
full_run() {
    local name=$1 dir=$WORK/full-$1 key last mark want99=$(((LINES * 99 + 99) / 100))
    key=$(counted_key "$name")
    last=$(last_key "$name")
    mark=$(mark_key "$name")
    mkdir -p "$dir"
    start_sink "$dir" "$want99"
    log "full speed: $name reads $FILE_MIB MiB ($LINES lines)"
    local t0 got=0 seen=0 seen_at deadline
    t0=$(now)
    start_shipper "$name" "$FILE" "$dir"
    seen_at=${t0%.*}
    deadline=$((${t0%.*} + TIMEOUT_SECS))
    while :; do
        sleep 0.1
        shipper_alive "$name" "$dir"
        sink_count
        got=$(count_of "$key")
        ((got >= LINES)) && break
        if ((got > seen)); then
            seen=$got
            seen_at=$EPOCHSECONDS
        fi
        ((EPOCHSECONDS - seen_at < STALL_SECS)) ||
            die "$name: nothing arrived for $STALL_SECS s ($got of $LINES lines); see $dir"
        ((EPOCHSECONDS < deadline)) || die "$name: not done after $TIMEOUT_SECS s ($got of $LINES lines)"
    done
    local cpu hwm rss sink_cpu last_us mark_us
    cpu=$(cpu_ticks "$SHIPPER_PID")
    hwm=$(status_kib "$SHIPPER_PID" VmHWM)
    rss=$(status_kib "$SHIPPER_PID" VmRSS)
    sink_cpu=$(cpu_ticks "$SINK_PID")
    if [[ $name == gantry-agent ]]; then
        # The agent's own counters, for a closer look (not in the report).
        curl -fsS --max-time 5 "http://$(agent_http "$dir")/metrics" >"$dir/agent-metrics.txt" 2>/dev/null || true
    fi
    # A second look: lines arriving after the count was reached are duplicates.
    sleep 1
    sink_count
    got=$(count_of "$key")
    last_us=$(count_of "$last")
    mark_us=$(count_of "$mark")
    local wall
    wall=$(calc "$last_us / 1000000 - $t0")
    result "full.$name.wall_s" "$wall"
    result "full.$name.wall99_s" "$(calc "$mark_us / 1000000 - $t0")"
    result "full.$name.cpu_s" "$(calc "$cpu / $CLK_TCK")"
    result "full.$name.hwm_kib" "$hwm"
    result "full.$name.rss_end_kib" "$rss"
    result "full.$name.lines" "$got"
    result "full.$name.sink_cpu_s" "$(calc "$sink_cpu / $CLK_TCK")"
    if [[ $name == gantry-agent ]]; then
        result "full.$name.wire_bytes" "$(count_of bytes_compressed)"
        result "full.$name.batches" "$(count_of batches)"
        result "full.$name.otlp_bytes" "$(count_of bytes_body)"
        result "full.$name.bad_requests" "$(count_of bad_requests)"
    else
        result "full.$name.wire_bytes" "$(count_of tcp_bytes)"
    fi
    log "$(printf 'full speed: %s done in %.2f s, %.2f CPU s, peak RSS %d MiB' "$name" "$wall" \
        "$(calc "$cpu / $CLK_TCK")" $((hwm / 1024)))"
    stop_pid "$SHIPPER_PID"
    stop_pid "$SINK_PID"
}

# Idle, then steady rate: shipper $1 tails a fresh file that a writer fills at $RATE lines/s.
steady_run() {
    local name=$1 dir=$WORK/steady-$1 key file
    key=$(counted_key "$name")
    file=$dir/steady.log
    mkdir -p "$dir"
    : >"$file"
    start_sink "$dir"
    start_shipper "$name" "$file" "$dir"
    log "idle: $name tails an empty file for $IDLE_SECS s"
    sleep 1
    shipper_alive "$name" "$dir"
    local c0 w0 c1 w1 idle_rss
    c0=$(cpu_ticks "$SHIPPER_PID")
    w0=$(now)
    sleep "$IDLE_SECS"
    c1=$(cpu_ticks "$SHIPPER_PID")
    w1=$(now)
    idle_rss=$(status_kib "$SHIPPER_PID" VmRSS)
    result "idle.$name.rss_kib" "$idle_rss"
    result "idle.$name.cpu_pct" "$(calc "($c1 - $c0) / $CLK_TCK / ($w1 - $w0) * 100")"

    log "steady: a writer appends $RATE lines/s for $RATE_SECS s; $name measured after $WARMUP_SECS s"
    python3 "$WORK/lines.py" rate "$file" "$RATE" "$RATE_SECS" >"$dir/writer.out" &
    local writer=$!
    PIDS+=("$writer")
    local tw c2 w2 c3 w3 end rss sum=0 n=0 max=0
    tw=$(now)
    end=$(calc "$tw + $RATE_SECS")
    sleep_until "$(calc "$tw + $WARMUP_SECS")"
    shipper_alive "$name" "$dir"
    c2=$(cpu_ticks "$SHIPPER_PID")
    w2=$(now)
    while awk "BEGIN { exit !($(calc "$end - $EPOCHREALTIME") > 1) }"; do
        sleep 1
        rss=$(status_kib "$SHIPPER_PID" VmRSS)
        sum=$((sum + rss))
        n=$((n + 1))
        ((rss > max)) && max=$rss
    done
    sleep_until "$end"
    shipper_alive "$name" "$dir"
    c3=$(cpu_ticks "$SHIPPER_PID")
    w3=$(now)
    rss=$(status_kib "$SHIPPER_PID" VmRSS)
    sum=$((sum + rss))
    n=$((n + 1))
    ((rss > max)) && max=$rss
    wait "$writer" || die "the steady writer failed; see $dir"
    forget_pid "$writer"
    local written welapsed wcpu
    read -r written _ welapsed wcpu <"$dir/writer.out"
    # Everything written must arrive (within 30 s of the writer's end).
    local i got=0
    for ((i = 0; i < 300; i++)); do
        sink_count
        got=$(count_of "$key")
        ((got >= written)) && break
        sleep 0.1
    done
    result "steady.$name.cpu_pct" "$(calc "($c3 - $c2) / $CLK_TCK / ($w3 - $w2) * 100")"
    result "steady.$name.window_s" "$(calc "$w3 - $w2")"
    result "steady.$name.rss_mean_kib" "$((sum / n))"
    result "steady.$name.rss_max_kib" "$max"
    result "steady.$name.hwm_kib" "$(status_kib "$SHIPPER_PID" VmHWM)"
    result "steady.$name.written" "$written"
    result "steady.$name.delivered" "$got"
    result "steady.$name.writer_rate" "$(calc "$written / $welapsed")"
    result "steady.$name.writer_cpu_pct" "$(calc "$wcpu / $welapsed * 100")"
    log "$(printf 'steady: %s used %.2f%% of a core; %d of %d lines arrived' "$name" \
        "$(calc "($c3 - $c2) / $CLK_TCK / ($w3 - $w2) * 100")" "$got" "$written")"
    stop_pid "$SHIPPER_PID"
    stop_pid "$SINK_PID"
}

# ---------------------------------------------------------------------------------------------------
# Report.

report() {
    python3 - "$RESULTS" <<'EOF'
import sys

r = {}
for line in open(sys.argv[1]):
    key, _, value = line.rstrip("\n").partition("=")
    r[key] = value

A, R = "gantry-agent", "rsyslog"
MIB = 1 << 20


def num(key):
    return float(r[key])


def f(x, digits=1):
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if b else "n/a"


rows = []


def row(label, figure, unit="", digits=1):
    """One table row: `figure(shipper)` for both shippers, and their ratio."""
    a, b = figure(A), figure(R)
    rows.append(f"| {label} | {f(a, digits)}{unit} | {f(b, digits)}{unit} | {ratio(a, b)} |")


lines = num("file.lines")
mib = num("file.bytes") / MIB
full = lambda n, k: num(f"full.{n}.{k}")
steady = lambda n, k: num(f"steady.{n}.{k}")
wall = lambda n: full(n, "wall_s")
cpu = lambda n: full(n, "cpu_s")
row("full speed: wall time, shipper start to last line received", wall, " s", 2)
row("full speed: wall time to 99% of the lines", lambda n: full(n, "wall99_s"), " s", 2)
row("full speed: MiB/s to 99% of the lines (without the end-of-input tail)",
    lambda n: 0.99 * mib / full(n, "wall99_s"))
row("full speed: lines/s", lambda n: lines / wall(n))
row("full speed: MiB/s (wall clock)", lambda n: mib / wall(n))
row("full speed: shipper CPU seconds (user + system)", cpu, " s", 2)
row("**full speed: MiB per CPU-second of the shipper**", lambda n: mib / cpu(n))
row("full speed: lines per CPU-second", lambda n: lines / cpu(n))
row("full speed: cores used (CPU s / wall s)", lambda n: cpu(n) / wall(n), "", 2)
row("full speed: peak RSS (VmHWM)", lambda n: full(n, "hwm_kib") / 1024, " MiB")
row("full speed: RSS at the end", lambda n: full(n, "rss_end_kib") / 1024, " MiB")
row("full speed: bytes on the wire per file byte", lambda n: full(n, "wire_bytes") / num("file.bytes"), "", 3)
row("full speed: sink CPU seconds (context: the sink shares the machine)", lambda n: full(n, "sink_cpu_s"), " s", 2)
row(f"**steady {int(num('rate')):,} lines/s: CPU, % of one core**", lambda n: steady(n, "cpu_pct"), "%", 2)
row("steady: RSS, mean over the window", lambda n: steady(n, "rss_mean_kib") / 1024, " MiB")
row("steady: RSS, max over the window", lambda n: steady(n, "rss_max_kib") / 1024, " MiB")
row("idle (empty file): RSS", lambda n: num(f"idle.{n}.rss_kib") / 1024, " MiB")
row("idle (empty file): CPU, % of one core", lambda n: num(f"idle.{n}.cpu_pct"), "%", 2)

m = r
print(f"### File to network: gantry-agent vs rsyslog (`{m['commit']}`)")
print()
print(f"Command: `{m['command']}`.")
print()
print(f"Machine: {m['cpus']} CPUs ({m['cpu_model']}), {m['memory']} RAM, {m['os']}, kernel {m['kernel']}; "
      f"work dir on {m['disk']}. Load average at the start: {m['load']}. {m['rustc']}; {m['rsyslog']}.")
print()
print(f"File: {mib:,.1f} MiB, {int(lines):,} lines ({num('file.bytes') / lines:.0f} bytes per line on average: "
      f"45% logfmt, 40% JSON, 15% plain text; timestamps, levels, request ids, durations), generated before the "
      f"runs and in the page cache for both. Each shipper ran alone, agent first, each with a fresh sink "
      f"(`null-plane`: counts records or lines, answers 200).")
print()
print("- gantry-agent: `--no-docker --no-host-metrics`, receivers off; disk buffer with an fsync per batch, "
      f"gzipped OTLP/HTTP protobuf ({int(num('full.gantry-agent.batches')):,} batches, "
      f"{num('full.gantry-agent.otlp_bytes') / num('file.bytes'):.2f} protobuf bytes per file byte before gzip).")
print("  Its wall time includes its end-of-input latency (up to about 1 s): the last line is held 1 s for multi-line "
      "joining, and the last, partial batch goes on `batch_timeout_ms` (1 s); the 99% figures leave it out.")
print("- rsyslog: `imfile` (inotify) -> `omfwd` TCP, template `%rawmsg%\\n`, default in-memory main queue "
      "(no disk queue, nothing fsynced), no parsing.")
print(f"- steady: a Python writer appends {int(num('rate')):,} lines/s in 10 ms chunks for {m['rate_secs']} s to a "
      f"fresh file; CPU and RSS over the last {num('steady.gantry-agent.window_s'):.0f} s "
      f"(after {m['warmup_secs']} s of warm-up); idle figures over {m['idle_secs']} s before the writer starts.")
print()
print("| figure | gantry-agent | rsyslog | agent / rsyslog |")
print("|---|---|---|---|")
for line in rows:
    print(line)
print()
checks = []
for n in (A, R):
    got, want = int(num(f"full.{n}.lines")), int(lines)
    checks.append(f"{n} full speed {got:,} of {want:,} lines")
    w, d = int(num(f"steady.{n}.written")), int(num(f"steady.{n}.delivered"))
    checks.append(f"{n} steady {d:,} of {w:,} (writer at {num(f'steady.{n}.writer_rate'):,.0f} lines/s, "
                  f"{num(f'steady.{n}.writer_cpu_pct'):.1f}% of a core)")
print("Delivered: " + "; ".join(checks) + ".")
bad = int(num("full.gantry-agent.bad_requests"))
if bad:
    print(f"\nThe sink refused {bad} batches of the agent: see the sink's stderr.")
EOF
}

# ---------------------------------------------------------------------------------------------------
# Main.

if ! command -v rsyslogd >/dev/null; then
    log "installing rsyslog (the package only; this script never starts or stops the system service)"
    if [[ $(id -u) == 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y rsyslog >&2
    else
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y rsyslog >&2
    fi
fi

if [[ $BUILD == 1 ]]; then
    log "building (release): gantry-agent and null-plane"
    (cd "$ROOT" && cargo build --release -p gantry-agent -p gantry-tests --bin gantry-agent --bin null-plane >&2)
fi
[[ -x $AGENT_BIN && -x $SINK_BIN ]] || die "missing $AGENT_BIN or $SINK_BIN; build them or drop BENCH_BUILD=0"

mkdir -p "$TMP_PARENT"
WORK=$(mktemp -d "$TMP_PARENT/gantry-file-bench.XXXXXX")
RESULTS=$WORK/results.env
: >"$RESULTS"
write_python

log "generating $BYTES bytes of log lines in $WORK"
FILE=$WORK/bench.log
read -r LINES FILE_BYTES gen_s _ < <(python3 "$WORK/lines.py" file "$FILE" "$BYTES")
FILE_MIB=$((FILE_BYTES / 1048576))
log "generated $LINES lines, $FILE_BYTES bytes in $gen_s s"
sync
result file.lines "$LINES"
result file.bytes "$FILE_BYTES"
result rate "$RATE"
result rate_secs "$RATE_SECS"
result warmup_secs "$WARMUP_SECS"
result idle_secs "$IDLE_SECS"

# Machine and build.
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    commit="$commit, uncommitted changes"
fi
disk_dev=$(findmnt -no SOURCE -T "$WORK" 2>/dev/null || echo unknown)
disk_fs=$(findmnt -no FSTYPE -T "$WORK" 2>/dev/null || echo unknown)
disk_parent=$(lsblk -no PKNAME "$disk_dev" 2>/dev/null | head -n 1 || true)
disk_name=${disk_parent:-$(basename "$disk_dev")}
rota=$(cat "/sys/block/$disk_name/queue/rotational" 2>/dev/null || echo "?")
result commit "$commit"
result command "$( (env | grep -E '^BENCH_' || true) | sort | tr '\n' ' ')agent/bench/file_to_network.sh"
result cpus "$(nproc)"
result cpu_model "$(lscpu 2>/dev/null | awk -F: '/^Model name/ { sub(/^[ \t]+/, "", $2); print $2; exit }')"
result memory "$(awk '/^MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
result os "$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null || echo unknown)"
result kernel "$(uname -r)"
result disk "$disk_fs on $disk_dev (sysfs rotational=$rota)"
result load "$(cut -d' ' -f1-3 /proc/loadavg)"
result rustc "$(rustc --version 2>/dev/null || echo 'rustc unknown')"
result rsyslog "$(rsyslogd -v 2>/dev/null | head -n 1 | awk '{ print $1, $2 }')"

for name in "${SHIPPERS[@]}"; do
    full_run "$name"
done
for name in "${SHIPPERS[@]}"; do
    steady_run "$name"
done

report
