"""Change capture: the trigger DDL that records which entity keys went stale."""
