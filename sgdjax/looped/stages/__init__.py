"""Stages of the looped study: train, evaluate, figures."""
