"""Stages of the LM study (see ``sgdjax.lm.STAGES``)."""
