#include <time.h>
#include <stdlib.h>
#include <unistd.h>
/* burn ON_MS of CPU every PERIOD_MS (ON_MS >= PERIOD_MS: always) */
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e3+t.tv_nsec/1e6;}
int main(int c,char**v){double on=atof(v[1]),per=atof(v[2]);volatile unsigned long x=0;
for(;;){double s=now();while(now()-s<on)x++; if(per>on) usleep((per-on)*1000);}}
