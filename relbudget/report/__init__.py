"""Report: the numbers of the study (analysis: efficiency per xi, the peak; compare: the budget
arms), its words (render), the git-tracked headline and the plots. It imports relbudget.core and
relbudget.measure, never relbudget.train: a report edit reruns no training."""
