"""An OTLP trace receiver for the tests: gRPC (the collector's TraceService) and HTTP/protobuf
(`POST /v1/traces`) on loopback, decoding with the OpenTelemetry project's own protobuf
definitions (opentelemetry-proto). Every span received is appended to OUT as one JSON line.

Usage: otlp_receiver.py OUT [--discard]
Prints `grpc=PORT http=PORT` once both listen; runs until killed. With --discard (a collector for
benchmarks), HTTP exports are answered without being decoded and OUT gets only their byte count.
"""

import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

out_path = sys.argv[1]
discard = "--discard" in sys.argv[2:]
lock = threading.Lock()
received_bytes = 0


def attribute_value(value):
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind in ("array_value", "kvlist_value"):
        return str(getattr(value, kind))
    return getattr(value, kind)


def record(request, via):
    lines = []
    for resource_spans in request.resource_spans:
        resource = {a.key: attribute_value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                lines.append(
                    json.dumps(
                        {
                            "via": via,
                            "service": resource.get("service.name"),
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": span.kind,
                            "start_ns": span.start_time_unix_nano,
                            "end_ns": span.end_time_unix_nano,
                            "status": span.status.code,
                            "attributes": {a.key: attribute_value(a.value) for a in span.attributes},
                            "links": [
                                {"trace_id": link.trace_id.hex(), "span_id": link.span_id.hex()}
                                for link in span.links
                            ],
                        }
                    )
                )
    with lock, open(out_path, "a") as out:
        for line in lines:
            out.write(line + "\n")


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        record(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()


class HttpReceiver(BaseHTTPRequestHandler):
    def do_POST(self):
        global received_bytes
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        if discard:
            with lock:
                received_bytes += len(body)
                with open(out_path, "w") as out:
                    out.write(f"{received_bytes}\n")
        else:
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            record(request, "http")
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
grpc_port = server.add_insecure_port("127.0.0.1:0")
server.start()
http_server = ThreadingHTTPServer(("127.0.0.1", 0), HttpReceiver)
threading.Thread(target=http_server.serve_forever, daemon=True).start()
print(f"grpc={grpc_port} http={http_server.server_address[1]}", flush=True)
server.wait_for_termination()
