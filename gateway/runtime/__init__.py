"""The stream runtime shared by every role: connection, coalescing, consumer lanes, leases."""
