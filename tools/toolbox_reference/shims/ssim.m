function [ssimval, ssimmap] = ssim(A, ref)
% Shim (ours) for MATLAB's ssim (Image Processing Toolbox), which Octave's image package (2.14) lacks,
% written from MATLAB's documentation, default arguments only: local statistics weighted by an isotropic
% Gaussian of standard deviation 1.5 ('Radius') on a 2*ceil(3*1.5)+1 = 11 square window
% (fspecial('gaussian')), applied by imfilter with 'conv' and 'replicate' borders; DynamicRange L from the
% class of A (1 for single/double, 255 for uint8, 65535 for uint16); C1 = (0.01 L)^2, C2 = (0.03 L)^2,
% C3 = C2/2 with exponents [1 1 1], i.e. Wang et al.'s eq. 13; ssimval = mean of the map over all pixels.
  if nargin ~= 2, error('ssim shim: only ssim(A, ref) with the default parameters'); end
  if ~strcmp(class(A), class(ref)) || ~isequal(size(A), size(ref)) || ndims(A) > 2
    error('ssim shim: A and ref must be 2D images of one class and size');
  end
  if isa(A, 'double') || isa(A, 'single')
    L = 1;
  elseif isa(A, 'uint8') || isa(A, 'uint16')
    L = double(intmax(class(A)));
  else
    error('ssim shim: class %s not supported', class(A));
  end
  A = double(A); ref = double(ref);
  w = fspecial('gaussian', [11 11], 1.5);
  g = @(x) imfilter(x, w, 'conv', 'replicate');
  mx = g(A); my = g(ref);
  sx2 = g(A.^2) - mx.^2;
  sy2 = g(ref.^2) - my.^2;
  sxy = g(A.*ref) - mx.*my;
  C1 = (0.01*L)^2; C2 = (0.03*L)^2;
  ssimmap = ((2*mx.*my + C1).*(2*sxy + C2)) ./ ((mx.^2 + my.^2 + C1).*(sx2 + sy2 + C2));
  ssimval = mean(ssimmap(:));
end
