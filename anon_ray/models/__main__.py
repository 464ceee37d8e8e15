import sys

from anon_ray.models.build import main

sys.exit(main())
