"""Reference trainers: other implementations trained on the same data, in the same batch order,
to check ours against (:mod:`trainers.reference.saelens`)."""
