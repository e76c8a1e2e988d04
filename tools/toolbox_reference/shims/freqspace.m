function [f1, f2] = freqspace(n, flag)
% Shim (ours) for MATLAB's freqspace, which Octave lacks: the documented frequency grid
% f = ((0:n-1) - floor(n/2)) * (2/n) for each dimension; 'meshgrid' returns [f1,f2] = meshgrid(fx, fy).
  if numel(n) == 1, n = [n n]; end
  fy = ((0:n(1)-1) - floor(n(1)/2)) * (2/n(1));
  fx = ((0:n(2)-1) - floor(n(2)/2)) * (2/n(2));
  if nargin > 1 && strcmp(flag, 'meshgrid')
    [f1, f2] = meshgrid(fx, fy);
  else
    f1 = fy; f2 = fx;
  end
end
