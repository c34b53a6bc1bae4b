"""The demo: a small network-services application that idxr-pg indexes end to end."""
