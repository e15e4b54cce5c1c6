#!/usr/bin/env python3
"""A grpc.health.v1 client that refuge did not write: grpcio and
grpcio-health-checking (installed by scripts/setup.sh).

  probe.py watch ADDRESS CA CERT KEY SERVICE...
      Watches each SERVICE ("" is the whole node) over mutual TLS and prints
      one JSON line per status it receives, then one when the stream ends.
  probe.py check ADDRESS SERVICE...
      Checks each SERVICE once on a plaintext port; one JSON line each.
"""
import json
import sys
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

lock = threading.Lock()


def out(**kw):
    kw["t"] = time.time()
    with lock:
        print(json.dumps(kw), flush=True)


def name(status):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def watch(stub, service):
    try:
        for r in stub.Watch(
            health_pb2.HealthCheckRequest(service=service), wait_for_ready=True
        ):
            out(service=service, status=name(r.status))
        out(service=service, end="stream ended")
    except grpc.RpcError as e:
        out(service=service, end=e.code().name, details=e.details())


def main():
    mode = sys.argv[1]
    if mode == "watch":
        addr, ca, cert, key = sys.argv[2:6]
        services = sys.argv[6:]
        creds = grpc.ssl_channel_credentials(
            root_certificates=open(ca, "rb").read(),
            private_key=open(key, "rb").read(),
            certificate_chain=open(cert, "rb").read(),
        )
        channel = grpc.secure_channel(addr, creds)
        stub = health_pb2_grpc.HealthStub(channel)
        threads = [
            threading.Thread(target=watch, args=(stub, s), daemon=True)
            for s in services
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elif mode == "check":
        addr = sys.argv[2]
        stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(addr))
        for s in sys.argv[3:]:
            try:
                r = stub.Check(health_pb2.HealthCheckRequest(service=s), timeout=10)
                out(service=s, status=name(r.status))
            except grpc.RpcError as e:
                out(service=s, error=e.code().name, details=e.details())
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
