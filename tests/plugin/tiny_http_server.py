"""A tiny HTTP server that stands in for `trl vllm-serve` in the executor tests.

GET /health answers 200 once ready (503 before). Options make it misbehave on purpose.
"""

import argparse
import http.server
import os
import signal
import subprocess
import sys
import threading
import time

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--delay-ready", type=float, default=0.0, metavar="SECONDS")
parser.add_argument("--exit-after", nargs=2, metavar=("SECONDS", "CODE"))
parser.add_argument("--print-env", action="append", default=[], metavar="NAME")
parser.add_argument("--ignore-sigterm", action="store_true")
parser.add_argument("--spawn-child", action="store_true", help="start a sleeping grandchild")
parser.add_argument("--child-ignore-sigterm", action="store_true")
parser.add_argument("--label", default="", help="ignored; lets tests put text on the command line")
parser.add_argument("--say", action="append", default=[], metavar="LINE", help="print LINE at start")
args = parser.parse_args()

if args.ignore_sigterm:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
for line in args.say:
    print(line, flush=True)
for name in args.print_env:
    print(f"{name}={os.environ.get(name, '<unset>')}", flush=True)
if args.spawn_child:
    code = "import signal, time\n"
    if args.child_ignore_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('ready', flush=True)\ntime.sleep(600)\n"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    child.stdout.readline()  # its SIGTERM handler is in place only once it says so
    print(f"child pid {child.pid}", flush=True)

started = time.monotonic()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.rstrip("/") != "/health":
            self.send_error(404)
        elif time.monotonic() - started < args.delay_ready:
            self.send_error(503, "warming up")
        else:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")


if args.exit_after:
    seconds, code = float(args.exit_after[0]), int(args.exit_after[1])

    def _exit():
        time.sleep(seconds)
        print(f"exiting with code {code} at {time.time():.6f}", flush=True)
        os._exit(code)

    threading.Thread(target=_exit, daemon=True).start()

server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print(f"listening on {args.port}", flush=True)
server.serve_forever()
