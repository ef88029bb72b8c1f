"""Quality control of the T1w: MRIQC-compatible image-quality metrics (:mod:`.iqms`), the
background masks they need (:mod:`.masks`), rule-based pass/warn/fail checks (:mod:`.checks`) and
controlled degradations of real scans for validating them (:mod:`.corrupt`)."""
