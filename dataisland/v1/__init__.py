"""Generated from proto/dataisland/v1 by scripts/gen_proto.py: do not edit."""
