"""The FC method: the FrequencyConsistencyTracker (:mod:`trainers.fc.tracker`), FC-guided splitting
(:mod:`trainers.fc.splitting`, :mod:`trainers.fc.guidance`), absorption repair
(:mod:`trainers.fc.repair`), and :mod:`trainers.fc.recipes`, the one file that registers every FC
recipe and its random control on top of the architectures of :mod:`trainers.saes`."""
