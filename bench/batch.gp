# Batch wall time against concurrency (bench/report.lua plot writes the data).
set terminal pngcairo size 800,500 font ",11"
set output outfile
set title "create_cases: 200 items, 20 ms each" noenhanced
set xrange [0.8:90]
set xlabel "concurrency"
set ylabel "wall time (ms)"
set logscale xy 2
set xtics (1, 2, 4, 8, 16, 32, 64)
set grid
set key top right
plot datafile using 1:2 with linespoints lw 2 pt 7 title "measured", \
     datafile using 1:3 with lines dt 2 lw 2 title "ideal: ceil(200/c) x 20 ms" noenhanced
