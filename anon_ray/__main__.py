from anon_ray.cli import run_main

run_main()
