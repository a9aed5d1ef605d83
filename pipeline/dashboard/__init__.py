"""``fc-sae dashboard``: a static HTML page per SAE showing chosen latents, built from the activation
cache and the SAE folder alone (no language-model forward). Entry point:
``pipeline.dashboard.build.build_dashboard(run_dir, DashboardOptions(...))``; this package file
imports nothing, so the command line's parser stays light."""
