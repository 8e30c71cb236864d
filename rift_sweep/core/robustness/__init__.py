"""Measuring robustness: PGD, AutoAttack, accuracy on clean and adversarial examples, intervals and paired tests."""
