"""Generated protobuf and gRPC code for protos/splitfc/v1 (do not edit; make protos)."""
