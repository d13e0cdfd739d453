"""The learning: rollout, the PPP reward, group advantages and the policy loss, the update steps, the SFT warm
start."""
