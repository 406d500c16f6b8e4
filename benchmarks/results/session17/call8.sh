# Session 17, device call 8: Nsight Compute metrics of the bf16 decode (shuffled and
# identity page tables) beside cuDNN's.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1 JATTN_CACHE_DIR=$PWD/.jattn-cache XLA_PYTHON_CLIENT_PREALLOCATE=false
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
M=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed,lts__t_sectors_op_read.sum,lts__t_sector_hit_rate.pct,lts__t_requests_srcunit_tex_op_read.sum,sm__cycles_elapsed.avg.per_second,launch__grid_size,launch__registers_per_thread,launch__shared_mem_per_block_dynamic,sm__warps_active.avg.pct_of_peak_sustained_active
timeout 400 "$NCU" -k regex:'mosaic|sdpa' --metrics $M python3 benchmarks/results/session17/ncu_decode_bf16.py > $OUT/ncu.log 2>&1; echo "ncu rc=$?"
grep -E "mosaic|sdpa|duration|dram__|lts__|cycles_elapsed|grid_size|registers|shared_mem|warps_active" $OUT/ncu.log | sed 's/  */ /g' | cut -c1-150 | head -90
