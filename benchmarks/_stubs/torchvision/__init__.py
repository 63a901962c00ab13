"""A stub, for benchmarks/race.py only: MosaicML Streaming imports torchvision at `import
streaming` (for its vision datasets, which the race does not use), and no torchvision build
matches the CPU torch of the machines the race runs on. Only those imports are satisfied."""
