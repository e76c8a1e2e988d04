function out = blkproc(a, blk, border, fun)
% Shim (ours) for MATLAB's deprecated blkproc (removed from Octave's image package): apply fun to each
% non-overlapping blk(1) x blk(2) block (border [0 0] only; partial blocks zero-padded as documented)
% and tile the results.
  if any(border ~= 0), error('blkproc shim: border must be [0 0]'); end
  [m, n] = size(a);
  mb = ceil(m / blk(1)); nb = ceil(n / blk(2));
  if mb*blk(1) > m || nb*blk(2) > n
    a(mb*blk(1), nb*blk(2)) = 0;  % grow with zeros (an exact fit is left as it is)
  end
  out = [];
  for i = 1:mb
    row = [];
    for j = 1:nb
      row = [row, fun(a((i-1)*blk(1)+1:i*blk(1), (j-1)*blk(2)+1:j*blk(2)))];
    end
    out = [out; row];
  end
end
