"""Measurements bench/run makes in Python: Signet's time to ready, and PyJWT's
in-process signing rate (the reference for POST /api/v1/sign) and the raw RSA rate of
the OpenSSL under it. Prints one number."""

import http.client
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


if __name__ == "__main__":
    if sys.argv[1] == "ready":
        time_to_ready(sys.argv[2:])
    elif sys.argv[1] == "pyjwt":
        pyjwt_rate(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "rsa":
        raw_rsa_rate(sys.argv[2])
    else:
        sys.exit(f"unknown measurement {sys.argv[1]}")
