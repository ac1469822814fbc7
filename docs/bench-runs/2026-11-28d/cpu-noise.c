/* CPU noise: busy for BUSY_US, asleep for IDLE_US, forever (one thread, normal priority). */
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
static double now_us(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
int main(int argc,char**argv){
  double busy=argc>1?atof(argv[1]):5000, idle=argc>2?atof(argv[2]):5000;
  volatile unsigned long x=0;
  for(;;){ double end=now_us()+busy; while(now_us()<end) x++; usleep((useconds_t)idle); }
}
