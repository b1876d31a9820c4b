"""Cloud side of splitfc: the gRPC inference service and its HTTP endpoints."""
