"""The engine: requests, the scheduler, the paged KV cache and the step loop."""
