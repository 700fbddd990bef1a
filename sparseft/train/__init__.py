"""The Trainer: fine-tuning with LoRS adapters under a memory budget that the Planner's schedule enforces."""
