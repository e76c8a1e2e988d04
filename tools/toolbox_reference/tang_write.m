function tang_write(fid, id, vals)
% One line `tang <triplet> <column> <value>` per row {column, value} of vals, to fid and to the console.
  for k = 1:size(vals,1)
    fprintf(fid, 'tang\t%s\t%s\t%.17g\n', id, vals{k,1}, vals{k,2});
    printf('%s %s %.17g\n', id, vals{k,1}, vals{k,2}); fflush(stdout);
  end
end
