"""SAE-Bench's core eval: the eval and its options (``main``) and the SAE-independent reference forwards
computed once per process (``reference_forwards``)."""
