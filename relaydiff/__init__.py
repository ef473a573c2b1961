"""relaydiff: a thin training and sampling layer for two-stage Relay Diffusion (RDM) on relay_kernels.

Modules follow NVlabs/edm: `networks` (EDM's SongUNet / DhariwalUNet and preconditioners; blocks in `layers`),
`loss` (EDMLoss, RelayLoss), `dataset`, `training_loop`, `checkpoint`, `sampling`, and the `train` CLI.
"""
