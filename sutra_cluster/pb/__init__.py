"""Generated protobuf and gRPC stubs. Regenerate with scripts/gen_proto.sh; do not edit."""
