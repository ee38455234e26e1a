"""Alignment after distillation, as the Bielik-Minitron report did: SFT -> DPO-Positive -> GRPO with Hugging Face
TRL. `data` (the three example formats, checked; torch-free: the launcher reads it), `demo` (the offline demo
examples built from the run), `dpop` (the DPO-Positive loss on TRL's DPOTrainer), `train` (the trainers, resume
and preemption, held-out before/after measurements) and the stages (`compactlm.align.stage`).
Reward functions for GRPO live in `compactlm.rewards`.
"""
