"""Write the dmey decomposition filters (PyWavelets' 'dmey', the Wavelet Toolbox's) for shims/dwt2.m.

python tools/toolbox_reference/dmey_filters.py /tmp/toolboxes/shims/dmey_filters.txt
"""

import sys

import pywt

w = pywt.Wavelet("dmey")
with open(sys.argv[1], "w", encoding="utf-8") as fh:
    for taps in (w.dec_lo, w.dec_hi):
        fh.write(" ".join(f"{t:.17g}" for t in taps) + "\n")
