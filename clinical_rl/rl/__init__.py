"""The RL loop: the driver's algorithm box, the role handles, experience, batches, checkpoints and weight sync."""
