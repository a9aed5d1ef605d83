"""SAE trainers: TopK (+AuxK), FC-TopK (TopK + FrequencyConsistencyTracker-guided splitting),
ReLU + L1 with resampling, BatchTopK and Matryoshka-BatchTopK; one shared loop (trainers.loop)."""
