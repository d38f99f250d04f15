"""Measurements bench/run makes in Python: Signet's time to ready, PyJWT's in-process
signing rate (the reference for POST /api/v1/sign), the raw RSA rate of the OpenSSL
under it (each prints one number), the browser bundle's sizes per page, and the
rotations run beside the JWKS load."""

import gzip
import http.client
import json
import os
import subprocess
import sys
import time


def time_to_ready(argv):
    """Seconds from exec to the first 200 from /health/ready, polled every millisecond."""
    host, port = argv[0].rsplit(":", 1)
    start = time.perf_counter()
    proc = subprocess.Popen(argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - start < 30:
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=1)
                conn.request("GET", "/health/ready")
                if conn.getresponse().status == 200:
                    print(f"{(time.perf_counter() - start) * 1000:.1f}")
                    return
            except OSError:
                pass
            time.sleep(0.001)
        print("nan")
    finally:
        proc.terminate()
        proc.wait()


def pyjwt_rate(alg, seconds):
    """jwt.encode per second for the claims bench/run sends, with iss/iat/exp and a kid."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if alg == "EdDSA":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    headers = {"kid": "x" * 43}
    n = 0
    deadline = time.perf_counter() + float(seconds)
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            now = int(time.time())
            jwt.encode(
                {"sub": "bench", "aud": "api", "iss": "http://127.0.0.1:3990", "iat": now, "exp": now + 300},
                key,
                algorithm=alg,
                headers=headers,
            )
        n += 100
    print(f"{n / (time.perf_counter() - start):.0f}")


def raw_rsa_rate(seconds):
    """RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second with cryptography's OpenSSL,
    the primitive under PyJWT's RS256: the physical limit of the reference."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    message = b"x" * 200
    n = 0
    deadline = time.perf_counter() + float(seconds)
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(100):
            key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        n += 100
    print(f"{n / (time.perf_counter() - start):.0f}")


def bundle_sizes(pkg):
    """KiB gzip -9 (each file compressed on its own, as served): the bundle every page
    loads (signet.wasm, signet.js and the split loader), then, from the split manifest,
    what each page adds the first time the browser shows it. One line each."""

    def kib(name):
        with open(os.path.join(pkg, name), "rb") as f:
            return len(gzip.compress(f.read(), 9)) / 1024

    loaders = [n for n in os.listdir(pkg) if n.startswith("__wasm_split") and n.endswith(".js")]
    main = kib("signet.wasm") + kib("signet.js") + sum(kib(n) for n in loaders)
    print(f"  every page: {main:.0f} KiB (of it signet.wasm {kib('signet.wasm'):.0f} KiB)")
    manifest = os.path.join(pkg, "__wasm_split_manifest.json")
    if not os.path.exists(manifest):
        print("  no split manifest: the bundle was built without --split")
        return
    with open(manifest) as f:
        pages = json.load(f)
    for name, chunks in sorted(pages.items()):
        extra = sum(kib(c + ".wasm") for c in chunks)
        page = name.strip("_").split("_route_view")[0]
        print(f"  {page} page: +{extra:.0f} KiB, {main + extra:.0f} KiB in all")


def rotate_every(url, token, seconds, interval):
    """POST /api/v1/keys/rotate every `interval` seconds for `seconds`, on one kept-alive
    connection, so the client adds no process start-ups to the load generator's core
    (a curl per rotation did: five forks every 0.5 s beside wrk). Prints "ok failed
    slowest_ms"."""
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    ok = failed = 0
    slowest = 0.0
    start = time.perf_counter()
    tick = start
    while tick - start < float(seconds):
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/api/v1/keys/rotate", body="{}", headers=headers)
            response = conn.getresponse()
            response.read()
            ok, failed = (ok + 1, failed) if response.status == 200 else (ok, failed + 1)
        except OSError:
            failed += 1
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        slowest = max(slowest, (time.perf_counter() - t0) * 1000)
        tick += float(interval)
        time.sleep(max(0.0, tick - time.perf_counter()))
    print(f"{ok} {failed} {slowest:.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "ready":
        time_to_ready(sys.argv[2:])
    elif sys.argv[1] == "pyjwt":
        pyjwt_rate(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "rsa":
        raw_rsa_rate(sys.argv[2])
    elif sys.argv[1] == "rotate":
        rotate_every(*sys.argv[2:6])
    elif sys.argv[1] == "bundle":
        bundle_sizes(sys.argv[2])
    else:
        sys.exit(f"unknown measurement {sys.argv[1]}")
