function [cA, cH, cV, cD] = dwt2(x, wname)
% Shim (ours) for the Wavelet Toolbox's dwt2, which Octave lacks, written from its documentation: one
% level, wname 'dmey' only, the default extension mode 'sym' (half-point symmetric: lf-1 samples added on
% each side, reflected again where the signal is shorter than that), convolution with the decomposition
% filters Lo_D / Hi_D keeping the n+lf-1 central samples, then every second one starting with the second
% (floor((n+lf-1)/2) coefficients); rows filtered first, then columns. cA low/low, cH low along rows and
% high along columns, cV the reverse, cD high/high.
% The dmey filters are read from dmey_filters.txt beside this file (line 1 Lo_D, line 2 Hi_D), which
% tools/toolbox_reference/dmey_filters.py writes from PyWavelets' 'dmey' (the Wavelet Toolbox's filters).
  if ~strcmp(wname, 'dmey'), error('dwt2 shim: only ''dmey'''); end
  flt = load(fullfile(fileparts(mfilename('fullpath')), 'dmey_filters.txt'));
  lo = flt(1, :); hi = flt(2, :);
  x = double(x);
  zl = along_rows(x, lo); zh = along_rows(x, hi);
  cA = along_rows(zl.', lo).'; cH = along_rows(zl.', hi).';
  cV = along_rows(zh.', lo).'; cD = along_rows(zh.', hi).';
end

function y = along_rows(x, f)
  n = size(x, 2); lf = numel(f);
  k = mod((1 - (lf - 1):(n + lf - 1)) - 1, 2*n);   % half-point symmetric extension, period 2n
  k(k >= n) = 2*n - 1 - k(k >= n);
  z = conv2(x(:, k + 1), f(:).', 'valid');          % n + lf - 1 samples per row
  y = z(:, 2:2:end);
end
