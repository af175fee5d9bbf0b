"""Stands in for `trl vllm-serve` whose LLM worker raises: POST /generate/ hands the request to a multiprocessing
worker and waits for its answer forever; the worker raises ValueError, and (like llm_worker with its EngineCore)
it has a non-daemon child that never exits, so multiprocessing blocks joining it and never prints the traceback."""

import http.server
import multiprocessing as mp
import sys
import time


def engine_core():
    while True:
        time.sleep(1)


def worker(conn):
    mp.get_context("spawn").Process(target=engine_core).start()  # non-daemon: joined at exit
    conn.recv()
    raise ValueError("The decoder prompt (length 600) is longer than the maximum model length of 512.")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def do_POST(self):
        PARENT.send("go")
        PARENT.recv()  # never answered


if __name__ == "__main__":
    if "--ignore-term" in sys.argv:  # like uvicorn's graceful shutdown, which waits for the hung request
        import signal

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ctx = mp.get_context("spawn")
    PARENT, child = ctx.Pipe()
    ctx.Process(target=worker, args=(child,)).start()
    print("ready", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
