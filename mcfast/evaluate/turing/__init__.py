"""Visual Turing Test: readers label a balanced, shuffled set of real and synthetic images as Real or Fake.

``study`` builds a study folder (rendered images + SQLite), ``app`` serves it to readers, ``store`` keeps the answers,
``stats`` and ``report`` turn them into accuracy, sensitivity, specificity, binomial tests and Fleiss' kappa.
"""
