"""Opens N keep-alive HTTP/1.1 connections, makes one request on each, and holds them open,
for `cargo xtask bench memory`.

Usage: python3 hold_connections.py PORT N PATH
  Raises its soft fd limit to the hard limit, opens the connections (at most 200 connecting at
  once), prints "open <ok> <failed>" and waits for commands on stdin:
    again   one more request on every open connection, then prints "done <ok> <failed>"
    close   (or end of input) closes every connection and exits
"""
import asyncio
import resource
import sys

port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
REQUEST = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (path, port)).encode()


async def exchange(reader, writer):
    writer.write(REQUEST)
    await writer.drain()
    length = 0
    status = await reader.readline()
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status.startswith(b"HTTP/1.1 200")


async def open_one(limit, conns):
    async with limit:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if await exchange(reader, writer):
                conns.append((reader, writer))
                return True
            writer.close()
        except OSError:
            pass
        return False


async def again(conns):
    async def one(c):
        try:
            return await exchange(*c)
        except (OSError, asyncio.IncompleteReadError):
            return False

    oks = await asyncio.gather(*(one(c) for c in conns))
    return sum(oks), len(oks) - sum(oks)


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    conns = []
    limit = asyncio.Semaphore(200)
    oks = await asyncio.gather(*(open_one(limit, conns) for _ in range(n)))
    print("open %d %d" % (sum(oks), n - sum(oks)), flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if line == "again":
            ok, failed = await again(conns)
            print("done %d %d" % (ok, failed), flush=True)
        else:
            break
    for _, writer in conns:
        writer.close()
    print("closed", flush=True)


asyncio.run(main())
