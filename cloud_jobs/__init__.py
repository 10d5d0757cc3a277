"""Cloud jobs: training at scale, evaluation, export, bundling and publishing."""
